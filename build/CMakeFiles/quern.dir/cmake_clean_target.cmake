file(REMOVE_RECURSE
  "libquern.a"
)
