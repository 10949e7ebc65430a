#!/usr/bin/env bash
# buf breaking against the previous commit of main, once that commit has protos.
set -euo pipefail
BUF=".venv/bin/buf"
if ! git rev-parse --verify --quiet HEAD~1 >/dev/null; then
    echo "buf breaking: no previous commit to compare against"
    exit 0
fi
if ! git cat-file -e HEAD~1:proto 2>/dev/null; then
    echo "buf breaking: the previous commit has no proto/ yet"
    exit 0
fi
"$BUF" breaking proto --against ".git#ref=HEAD~1,subdir=proto"
echo "buf breaking: no breaking change against HEAD~1"
