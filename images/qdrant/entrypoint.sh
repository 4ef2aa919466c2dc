#!/usr/bin/env bash
# Qdrant's image starts ./qdrant through this script with the container's
# arguments; exec keeps Qdrant as the process that receives SIGTERM.
exec ./qdrant "$@"
