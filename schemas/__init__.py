"""Table contract of tagrecall: Spark schemas (``schemas.tables``) and the catalog
(``schemas.catalog``) of where each table lives and how it is partitioned.

``schemas.catalog`` imports nothing from Spark, so DAG files can use it at parse time.
"""
