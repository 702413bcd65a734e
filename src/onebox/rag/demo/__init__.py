"""Demo knowledge-base documents about the fictional company Varnolia Tech (沃萝科技)."""
