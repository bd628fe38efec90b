"""`python -m betterproto_nats_plugin --include` prints the folder to pass to `protoc -I` for
`natsmicro/options.proto`; without arguments it runs as the protoc plugin."""

import sys

from .adapter import include_dir
from .main import main

if sys.argv[1:] == ["--include"]:
    print(include_dir())
else:
    main()
