"""`mesh`: the command line, a thin layer over the library (and the only part of `mesh` that
imports `replay`)."""
