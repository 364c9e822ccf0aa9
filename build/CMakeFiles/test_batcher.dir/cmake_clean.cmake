file(REMOVE_RECURSE
  "CMakeFiles/test_batcher.dir/tests/unit/test_batcher.c.o"
  "CMakeFiles/test_batcher.dir/tests/unit/test_batcher.c.o.d"
  "tests/test_batcher"
  "tests/test_batcher.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/test_batcher.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
