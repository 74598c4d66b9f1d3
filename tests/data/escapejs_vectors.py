"""Writes escapejs_vectors.json: inputs and Django's own `escapejs` output for each.

Run with Django installed (`pip install django`):
    python3 tests/data/escapejs_vectors.py > tests/data/escapejs_vectors.json
"""
import json

import django
from django.utils.html import escapejs

INPUTS = [
    "",
    "plain ascii",
    '{"a": "</script><script>alert(1)</script>"}',
    "quotes ' and \" and `backtick`",
    "back\\slash",
    "<!-- comment --> & amp; = equals",
    "line\nbreak\r\ttab\x00nul\x1fus\x7fdel",
    "".join(chr(c) for c in range(0x20)),
    "separators \u2028 and \u2029",
    "unicode é 漢字 😀 \u00a0",
    "a-b;c=d",
    "\x0b\x0c",
]

print(json.dumps({
    "django": django.__version__,
    "vectors": [{"input": s, "escaped": escapejs(s)} for s in INPUTS],
}, indent=2))
