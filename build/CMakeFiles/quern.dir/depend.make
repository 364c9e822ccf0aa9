# Empty dependencies file for quern.
# This may be replaced when dependencies are built.
