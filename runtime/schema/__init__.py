"""What generated code declares about a service: `ServiceSpec` / `MethodSpec` with their options, key
templates and stores, and `ServiceBase`, the base of API v1 services. It may import `core` and
`encoding`.
"""
