"""Search and tuning (planned): sensitivity analysis, ILP mixed precision, XGBoost-guided configuration
search and MetaSchedule tuning databases. Imports core, passes and targets; nothing imports it yet."""
