-- Products per category, and in the whole catalogue: what decides which categories keep their own index.
SELECT category, count(*) AS products, sum(count(*)) OVER () AS total
FROM products
GROUP BY category
