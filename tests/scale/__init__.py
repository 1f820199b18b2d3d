"""Several broker processes on one PostgreSQL: any instance serves any step, nothing is lost."""
