
seed-1Once upon a time2млL?(fff?@HPH