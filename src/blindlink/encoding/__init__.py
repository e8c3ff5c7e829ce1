"""The encoder client: CSV validation, linkage schemas, clkhash-identical CLKs, file formats."""
