"""Model data srtool needs at run time (see NOTICE.md for provenance and licences)."""
