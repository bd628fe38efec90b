"""Subject naming: the snake case of endpoint names and default subject prefixes, at generation time."""

from __future__ import annotations

import re

# An underscore goes before an upper-case letter that follows a lower-case letter or a digit
# (`myAPI` -> `my_API`, `OrderV2` stays one word until the digit), or that ends an acronym
# because the next letter is lower-case (`HTTPStatus` -> `HTTP_Status`).
_AFTER_LOWER_OR_DIGIT = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_ACRONYM_END = re.compile(r"(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """`GetHTTPStatus` -> `get_http_status`, `V2Order` -> `v2_order`; existing underscores stay."""
    name = _ACRONYM_END.sub("_", name)
    name = _AFTER_LOWER_OR_DIGIT.sub("_", name)
    return name.lower()
