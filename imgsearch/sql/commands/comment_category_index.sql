-- Labels a category index with its category, which is how imgsearch finds the index of a category.
COMMENT ON INDEX {index} IS {category};
