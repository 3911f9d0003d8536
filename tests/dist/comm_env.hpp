// The job's communicator, made once by test_comm.cpp's main() for every test of test_dist.
#pragma once
#include "dist/comm.hpp"

extern dsv3::dist::Comm* g_comm;
