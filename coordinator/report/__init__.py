"""Read models as plain data, no rich: task rows and details (``rows``), status (``status``), events, logs."""
