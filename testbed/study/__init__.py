"""Studies: experiments that run real clients against a real lab and report figures."""
