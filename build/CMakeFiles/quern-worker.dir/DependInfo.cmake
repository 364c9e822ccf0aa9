
# Consider dependencies only in project.
set(CMAKE_DEPENDS_IN_PROJECT_ONLY OFF)

# The set of languages for which implicit dependencies are needed:
set(CMAKE_DEPENDS_LANGUAGES
  )

# The set of dependency files which are needed:
set(CMAKE_DEPENDS_DEPENDENCY_FILES
  "/work/main/worker/main.c" "CMakeFiles/quern-worker.dir/worker/main.c.o" "gcc" "CMakeFiles/quern-worker.dir/worker/main.c.o.d"
  "/work/main/worker/zmq_transport.c" "CMakeFiles/quern-worker.dir/worker/zmq_transport.c.o" "gcc" "CMakeFiles/quern-worker.dir/worker/zmq_transport.c.o.d"
  )

# Targets to which this target links.
set(CMAKE_TARGET_LINKED_INFO_FILES
  "/work/main/build/CMakeFiles/quern.dir/DependInfo.cmake"
  )

# Fortran module output directory.
set(CMAKE_Fortran_TARGET_MODULE_DIR "")
