"""CRRL building blocks without Ray: candidate sets, rewards, advantages and policy objectives."""
