"""Stage-I job: CLIP-AD adaptation of the CLIP vision tower (MIL-NCE + ADs), its retrieval eval and Fig B.2."""
