"""The client side: `ClientCall`, the one owner of a call on the client, how it opens, the views users
hold, `ClientBase` (what generated clients call) and the helpers of persisted methods. It may import
every lower package; never `serving`.
"""
