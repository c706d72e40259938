"""Distribution: ring placement, membership, coordination, handoff, transitions, repair."""
