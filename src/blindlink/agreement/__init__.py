"""The linkage agreement: what the parties agreed to link, and what each may receive."""
