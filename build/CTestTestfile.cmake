# CMake generated Testfile for 
# Source directory: /work/main
# Build directory: /work/main/build
# 
# This file includes the relevant testing commands required for 
# testing this directory and lists subdirectories to be tested as well.
add_test([=[unit.test_batcher]=] "/work/main/build/tests/test_batcher")
set_tests_properties([=[unit.test_batcher]=] PROPERTIES  ENVIRONMENT "QN_TEST_TMP=/work/main/build/tmp" LABELS "unit" TIMEOUT "120" _BACKTRACE_TRIPLES "/work/main/CMakeLists.txt;108;add_test;/work/main/CMakeLists.txt;0;")
