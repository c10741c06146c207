"""Several worker processes behind one front (``botcall serve --workers N``)."""
