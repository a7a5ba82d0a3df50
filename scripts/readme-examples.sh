#!/usr/bin/env bash
# Runs the README's examples (every ```sh block from "Try it" up to
# "Configuration"), in order, in one shell, against `rdm up --demo` (every
# port 0; `localhost:8080` in the text becomes the real address). curl
# fails on any HTTP error, and so does this script. grpcurl is not packaged
# for this machine: its lines are left out, and said so. Called by ./test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export RDM_ADMIN_PASSWORD=change-me-admin     # what the README tells rdm up
. scripts/demo-up.sh
addr=${base#http://}

python3 - "$addr" > "$work/examples.sh" <<'PY'
import re, sys
addr = sys.argv[1]
text = open("README.md").read()
section = text[text.index("## Try it"):text.index("## Configuration")]
commands = []
for block in re.findall(r"```sh\n(.*?)```", section, re.S):
    command = ""
    for line in block.splitlines():
        command += line + "\n"
        if line.endswith("\\"):
            continue
        if command.lstrip().startswith("grpcurl"):
            first = command.splitlines()[0].replace("'", "").rstrip(" \\")
            print(f"echo 'not run (grpcurl is not packaged here): {first}'")
        else:
            commands.append(command)
        command = ""
print("curl() { command curl --fail-with-body \"$@\"; }")
print("".join(commands).replace("localhost:8080", addr).replace("127.0.0.1:8080", addr))
PY
PATH="$PWD/.tools/node_modules/.bin:$PATH" bash -euo pipefail "$work/examples.sh" > "$work/ran.log" 2>&1 \
  || { cat "$work/ran.log"; echo "a README example failed (above)"; exit 1; }
grep '^not run' "$work/ran.log" || true
echo "README examples: $(grep -c 'curl\|buf curl' "$work/examples.sh") commands ran against rdm up --demo"
