"""canary-guard shared library: policy, event decoding, decision core, and GCP clients."""
