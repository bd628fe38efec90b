"""`python -m betterproto_nats_plugin`: `--include` prints the folder to pass to `protoc -I` for
`natsmicro/options.proto`; `init [DIR]` starts a project; without arguments it runs as the protoc plugin."""

import sys

from . import include_dir
from .main import main

if sys.argv[1:] == ["--include"]:
    print(include_dir())
elif sys.argv[1:2] == ["init"]:
    from .scaffold import main as init

    sys.exit(init(sys.argv[2:]))
else:
    main()
