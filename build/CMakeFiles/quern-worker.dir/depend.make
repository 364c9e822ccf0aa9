# Empty dependencies file for quern-worker.
# This may be replaced when dependencies are built.
