"""The call gate's token attack matrix (SPEC §6), through a real channel."""
