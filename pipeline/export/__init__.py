"""Export: the selected samples -> dataset shards (WebDataset, Parquet), metadata, card and manifest."""
