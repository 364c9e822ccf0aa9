
# Consider dependencies only in project.
set(CMAKE_DEPENDS_IN_PROJECT_ONLY OFF)

# The set of languages for which implicit dependencies are needed:
set(CMAKE_DEPENDS_LANGUAGES
  )

# The set of dependency files which are needed:
set(CMAKE_DEPENDS_DEPENDENCY_FILES
  "/work/main/lib/batcher.c" "CMakeFiles/quern.dir/lib/batcher.c.o" "gcc" "CMakeFiles/quern.dir/lib/batcher.c.o.d"
  "/work/main/lib/core.c" "CMakeFiles/quern.dir/lib/core.c.o" "gcc" "CMakeFiles/quern.dir/lib/core.c.o.d"
  "/work/main/lib/cpu/epilogue.c" "CMakeFiles/quern.dir/lib/cpu/epilogue.c.o" "gcc" "CMakeFiles/quern.dir/lib/cpu/epilogue.c.o.d"
  "/work/main/lib/error.c" "CMakeFiles/quern.dir/lib/error.c.o" "gcc" "CMakeFiles/quern.dir/lib/error.c.o.d"
  "/work/main/lib/executor.c" "CMakeFiles/quern.dir/lib/executor.c.o" "gcc" "CMakeFiles/quern.dir/lib/executor.c.o.d"
  "/work/main/lib/log.c" "CMakeFiles/quern.dir/lib/log.c.o" "gcc" "CMakeFiles/quern.dir/lib/log.c.o.d"
  "/work/main/lib/tensor.c" "CMakeFiles/quern.dir/lib/tensor.c.o" "gcc" "CMakeFiles/quern.dir/lib/tensor.c.o.d"
  )

# Targets to which this target links.
set(CMAKE_TARGET_LINKED_INFO_FILES
  )

# Fortran module output directory.
set(CMAKE_Fortran_TARGET_MODULE_DIR "")
