# Empty dependencies file for test_batcher.
# This may be replaced when dependencies are built.
