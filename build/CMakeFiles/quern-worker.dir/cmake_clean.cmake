file(REMOVE_RECURSE
  "CMakeFiles/quern-worker.dir/worker/main.c.o"
  "CMakeFiles/quern-worker.dir/worker/main.c.o.d"
  "CMakeFiles/quern-worker.dir/worker/zmq_transport.c.o"
  "CMakeFiles/quern-worker.dir/worker/zmq_transport.c.o.d"
  "quern-worker"
  "quern-worker.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/quern-worker.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
