"""Bytes and messages: protobuf's wire format for the generated codecs (`protobuf`, exported through
`_api_v1`), and message bodies in protobuf or proto3 JSON (`codec`). Pure;
it may import `core` only.
"""
