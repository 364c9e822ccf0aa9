file(REMOVE_RECURSE
  "CMakeFiles/quern.dir/lib/batcher.c.o"
  "CMakeFiles/quern.dir/lib/batcher.c.o.d"
  "CMakeFiles/quern.dir/lib/core.c.o"
  "CMakeFiles/quern.dir/lib/core.c.o.d"
  "CMakeFiles/quern.dir/lib/cpu/epilogue.c.o"
  "CMakeFiles/quern.dir/lib/cpu/epilogue.c.o.d"
  "CMakeFiles/quern.dir/lib/error.c.o"
  "CMakeFiles/quern.dir/lib/error.c.o.d"
  "CMakeFiles/quern.dir/lib/executor.c.o"
  "CMakeFiles/quern.dir/lib/executor.c.o.d"
  "CMakeFiles/quern.dir/lib/log.c.o"
  "CMakeFiles/quern.dir/lib/log.c.o.d"
  "CMakeFiles/quern.dir/lib/tensor.c.o"
  "CMakeFiles/quern.dir/lib/tensor.c.o.d"
  "libquern.a"
  "libquern.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/quern.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
