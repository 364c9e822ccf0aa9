CMakeFiles/quern.dir/lib/error.c.o: /work/main/lib/error.c \
 /usr/include/stdc-predef.h /work/main/lib/error.h
