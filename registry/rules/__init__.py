"""Pure rules: no asyncpg, no grpc, no files.

The citizen model, PINs, dates, names, civil registration, cards, identity, tokens, the audit chain.
"""
