#!/usr/bin/env bash
# Placeholder until the Kubernetes tier lands: nothing to build yet.
exit 0
