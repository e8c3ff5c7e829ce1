"""The encoder client's machinery: CSV validation, linkage schemas, clkhash encoding, file formats."""
