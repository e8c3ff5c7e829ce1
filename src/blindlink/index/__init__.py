"""The standing custodian index: the custodian's encodings memory-mapped and its blocking-key
postings sorted on disk, built once when its upload commits, so that a requester batch reads
only the postings of its own key values and the encodings they point to (layout.py has the
files)."""
