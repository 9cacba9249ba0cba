"""Students and tools built on ovseg outside its package, each named by its configs'
EXTENSIONS (docs/new_student.md)."""
