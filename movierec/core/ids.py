"""Raw user and movie ids: the one range every entry point accepts.

The data loader, the REST API and the CLI all take ids in ``[0, MAX_ID]``: any MovieLens id, any
database key that fits a signed 64-bit integer with room to spare, and no negative numbers. Ids
the loader took but the API then refused made trained users unreachable.
"""

MAX_ID = 2**62
