# dsv3_library(NAME folder DEPS ...): one folder = one static library = one namespace.
# Sources are globbed so adding a file needs no CMake edit.
function(dsv3_library name folder)
  cmake_parse_arguments(ARG "" "" "DEPS" ${ARGN})
  file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/src/${folder}/*.cpp)
  add_library(${name} STATIC ${srcs})
  target_include_directories(${name} PUBLIC ${CMAKE_SOURCE_DIR}/src)
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
  list(LENGTH srcs nsrcs)
  if(nsrcs GREATER 2)
    dsv3_pch(${name})
  endif()
endfunction()

# Precompiled headers (DSV3_PCH) in clang builds (the sanitizer + fuzz build of scripts/test.sh):
# the system headers that most files include (the standard library, fmt, nlohmann::json;
# GoogleTest for the tests) are parsed, and their templates instantiated, once per target instead
# of once per file. Measured with clang 14 at -O1 with ASan + UBSan: 8.8 -> 6.7 s CPU for
# tokenizer/bpe.cpp, 14.1 -> 11.1 s for io/safetensors.cpp, 11.3 -> 10.0 s for a test file, and
# never slower (clang reads a precompiled header lazily). Not with GCC: its precompiled header of
# these headers is about 110 MB, and loading it costs about what parsing them does (the
# tokenizer library and its tests: 101 s CPU without, 97 s + 12 s for the headers with), so the
# Release build compiles as before. Off also under ccache (/work/bin/dsv3-build): ccache does not
# cache a file compiled against a precompiled header unless its sloppiness settings allow it.
# The headers are only put in front of each file: a file must still include what it uses, which
# the builds without them keep checking (docs/reliability.md).
if(DSV3_PCH AND NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  set(DSV3_PCH OFF)
endif()
if(DSV3_PCH AND CMAKE_CXX_COMPILER_LAUNCHER MATCHES "ccache")
  message(STATUS "dsv3: precompiled headers off (the compiler launcher is ccache)")
  set(DSV3_PCH OFF)
endif()
set(DSV3_PCH_HEADERS <algorithm> <array> <atomic> <chrono> <cmath> <cstdint> <cstdio> <cstring>
    <filesystem> <functional> <map> <memory> <mutex> <optional> <span> <string> <string_view>
    <unordered_map> <vector> <fmt/format.h> <nlohmann/json.hpp>)

# dsv3_pch(TARGET [TEST]): TARGET's own precompiled header (TEST: with GoogleTest). Each target
# compiles its own: clang refuses a precompiled header built with other -D flags.
function(dsv3_pch target)
  if(NOT DSV3_PCH)
    return()
  endif()
  set(headers ${DSV3_PCH_HEADERS})
  if("TEST" IN_LIST ARGN)
    list(APPEND headers <fstream> <gtest/gtest.h>)
  endif()
  target_precompile_headers(${target} PRIVATE ${headers})
endfunction()

# dsv3_pch_reuse(TARGET FROM): TARGET uses FROM's precompiled header (one-file executables built
# with the same flags as FROM: the benchmarks, the fuzz targets).
function(dsv3_pch_reuse target from)
  if(DSV3_PCH)
    target_precompile_headers(${target} REUSE_FROM ${from})
  endif()
endfunction()
