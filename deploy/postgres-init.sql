CREATE DATABASE loyalty_membership;
CREATE DATABASE loyalty_rewards;
CREATE DATABASE loyalty_feedback;
CREATE DATABASE loyalty_retention;
