"""Face stack run on the generator's device: detect -> align -> embed -> quality scores."""
