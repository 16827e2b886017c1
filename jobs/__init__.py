"""tagrecall's Spark steps: one module per step, each with pure DataFrame functions,
``run(spark, config, date)`` and ``main(argv)`` for spark-submit."""
