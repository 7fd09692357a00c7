"""Getting data out of Ascora: the canonical model, the two readers (REST API, Excel exports) and extraction."""
