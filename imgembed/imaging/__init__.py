"""Reading image files: folder walks and content hashes, formats, decoding, preprocessing. No torch."""
